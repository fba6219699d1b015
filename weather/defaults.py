"""Where the embedded defaults live: the data directory and the shipped checkpoint.

Shared by the command line, the service's settings and the benchmarks, so that none of them
imports another's entry point for a path.
"""

from pathlib import Path

DEFAULT_DATA_DIR = Path("data")
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "checkpoint.msgpack"
