"""Edge middlewares, one concern per module, outermost first in ``edge.app``."""
