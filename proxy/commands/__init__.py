"""The subcommands of ``ppproxy``, one module each, every one described by a
:class:`~proxy.commands.base.Command` (name, one-line summary, description, example, arguments,
run). :mod:`proxy.cli` lists them in ``COMMANDS``: a new command is a module here and one entry
there."""
