"""The web dashboard: pages served under /ui/ from this package's own templates and assets.

`server` is this inference server's view (its models, load, recent requests, a chat page, the
admin actions); `lab` is the whole lab's view, fed by any `LabSource` (fleet.dashboard's today, the
gateway's later). Nothing here imports `tasks`.
"""
