"""One module per ``facetrack`` subcommand, each with ``add_arguments(parser)`` and ``run(args) -> int``."""
