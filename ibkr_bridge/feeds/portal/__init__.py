"""The PORTAL feed: the Client Portal Web API over aiohttp."""
