"""jaxworld: world models in JAX — learn how a world behaves from video and actions."""

__version__ = "0.1.0"
