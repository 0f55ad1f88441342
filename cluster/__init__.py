"""Server side: engine, shard actors, coordinator, gateway, CLI."""
