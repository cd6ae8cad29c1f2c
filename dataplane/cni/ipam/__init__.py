"""IPAM plugins (host-local) and the helpers plugins use to delegate to one."""
