"""The gRPC client SDK: `Client` (blocking) and `AsyncClient` (asyncio)."""
from nestvec.client._messages import (CollectionInfo, GetResult, SearchResult, ShardInfo,
                                      StreamResult)
from nestvec.client.aio import AsyncClient
from nestvec.client.sync import Client

__all__ = ["AsyncClient", "Client", "CollectionInfo", "GetResult", "SearchResult", "ShardInfo",
           "StreamResult"]
