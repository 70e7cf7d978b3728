"""The command line (`llmops-stream`): replay, run, demo, report, loadgen."""
