"""Thin gRPC servicers: parse, call tdb_core, convert. No tensor math here."""
