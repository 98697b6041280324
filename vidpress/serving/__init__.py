"""Serving integrations: vidpress presses inside inference servers (see `vidpress.serving.vllm`)."""
