"""The mockerops agent: standard library only, shipped to hosts as one zipapp."""

AGENT_VERSION = 1
