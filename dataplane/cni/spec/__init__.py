"""The CNI protocol itself: versions, result types, errors, CNI_ARGS and the plugin skeleton.

Nothing here touches the network; plugins build on it, and so does the runtime side.
"""
