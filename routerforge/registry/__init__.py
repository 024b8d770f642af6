"""Registry: export, manifest, model card, load, and Hub publishing (`routerforge.registry.publish`)."""
