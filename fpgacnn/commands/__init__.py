"""One module per ``fpgacnn`` subcommand (see fpgacnn.cli)."""
