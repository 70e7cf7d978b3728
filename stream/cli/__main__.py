"""`python -m llmops_stream.stream.cli`: the same as the `llmops-stream` command."""

import sys

from llmops_stream.stream.cli.main import main

sys.exit(main())
