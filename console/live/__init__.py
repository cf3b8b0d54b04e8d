"""The web side of the live monitor: websocket consumers, the event stream and its counts.

The worker publishes on the Channels layer (contract: `syncer.live.messages`); this
package only reads from it, so a slow or absent browser never slows the sync.
"""
