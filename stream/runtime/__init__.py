"""Process plumbing shared by the adapters and the CLI: settings, logs, metrics, memory."""
