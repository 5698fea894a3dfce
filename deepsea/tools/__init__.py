"""Command-line tools beside the library: benchmarks and the demonstration (``deepsea bench``, ``bench-ops``,
``bench-kernels``, ``bench-data``, ``demo``).  Each module has ``add_arguments(parser)`` and
``main_with_args(args)``; :mod:`deepsea.cli` imports one only when its command runs."""
