"""The operator's tools: the `llm-runner` command line, the process supervisor, the compose generator, doctor."""
