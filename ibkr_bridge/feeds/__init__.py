"""Where positions and Greeks come from: the Feed protocol, SOCKET and PORTAL feeds."""
