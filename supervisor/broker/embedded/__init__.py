"""The embedded broker: in memory or journaled, served by a multiprocess manager."""
