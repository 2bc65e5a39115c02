"""The one error type jaxworld raises for problems a user can fix."""


class JaxWorldError(Exception):
  """A problem with the user's input, config, data or checkpoint.

  The message names what is wrong, where, and how to fix it; the CLI prints it
  as one paragraph without a traceback.
  """


def root_cause(error: BaseException, keep_end: bool = False) -> str:
  """`Type: message` of an error's root cause, on one line and shortened;
  `keep_end` keeps its end too, where a failed write names the OS error."""
  while error.__cause__ is not None:  # the root cause names the file and byte
    error = error.__cause__
  text = " ".join(str(error).split())
  if len(text) > 300:
    text = (f"{text[:150]} ... {text[-150:]}" if keep_end
            else f"{text[:300]}...")
  return f"{type(error).__name__}: {text}"
