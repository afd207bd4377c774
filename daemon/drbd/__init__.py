"""The DRBD observer and actuator: parsers, the S9 settings check and the adapter."""
