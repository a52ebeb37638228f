"""The SOCKET feed: ib_async talking to IB Gateway or TWS."""
