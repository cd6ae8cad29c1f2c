"""The `dataplane` command line; each subcommand lives with the subpackage it drives."""
