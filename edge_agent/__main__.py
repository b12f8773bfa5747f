"""``python -m edge_agent`` is ``edge-agent``."""

from edge_agent.cli import main

if __name__ == "__main__":
    main()
