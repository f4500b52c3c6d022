"""The wire contract: generated OpenFL messages, the tensor codec and incremental stream decoding."""
