"""The source stage: a logical replication slot read through wal2json."""
