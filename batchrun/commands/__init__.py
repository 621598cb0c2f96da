"""The command line's parts: ``parser`` builds the argparse parser; one module a command that needs
more than a few lines (``plan``, ``status``, ``export``, ``onray``), called by ``batchrun.cli``, which
loads the job, dispatches and turns errors into exit codes."""
