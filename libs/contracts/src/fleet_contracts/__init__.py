"""The one definition of every subject, command, event, code and envelope.

Every service imports its wire shapes from here; nothing on the bus or in the REST
contract is defined anywhere else.
"""
