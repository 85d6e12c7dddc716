"""rowscope: an MCP server that gives AI assistants one user's own rows, and nothing else."""

__version__ = "0.1.0"
