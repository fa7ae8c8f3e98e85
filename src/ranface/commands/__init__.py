"""CLI subcommands of the later stages. Each module defines ``add_parser(subparsers)``
which adds its subcommand and sets ``func`` to a handler returning an exit status.
The list of modules is fixed in :data:`COMMAND_MODULES` (no discovery by file name)."""

COMMAND_MODULES = ("prepare", "evaluate", "report", "train_gan", "train_expert", "synthesize", "demo", "table1", "export",
                   "gallery", "identify")
