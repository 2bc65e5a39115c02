"""The one error type jaxworld raises for problems a user can fix."""


class JaxWorldError(Exception):
  """A problem with the user's input, config, data or checkpoint.

  The message names what is wrong, where, and how to fix it; the CLI prints it
  as one paragraph without a traceback.
  """
