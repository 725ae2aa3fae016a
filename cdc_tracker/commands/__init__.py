"""Subcommands of ``cdc-tracker`` beyond run, check and demo (whose parsers are
in ``cdc_tracker.cli``), one module each, with ``common`` (what they share) and
``check`` (the work of ``check``).

Each subcommand module offers ``register(commands, add_common)``: it adds its
parser to the argparse sub-parsers and sets ``handler``, a function of the parsed
arguments that returns the exit code. ``add_common(parser)`` adds ``--config``,
``--dsn``, ``--rulebook``, ``--log-format`` and ``--log-level``. Heavy imports
stay inside the handler so that ``--help`` stays fast.
"""
