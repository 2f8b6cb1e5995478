"""HTTP routes; each module declares one router and stays thin (one service call per route)."""
