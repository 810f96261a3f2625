"""``edge-fleet serve``: the operator's web dashboard (the ``fleet`` extra: Starlette, uvicorn,
Jinja2; on the operator's machine, never on a device).

    state.py     what the pages show: the FleetView plus metrics history, OTA history, live
                 predictions and the channels' announcements, fed by one MQTT subscription
    rollouts.py  rollouts started from the page: ``agent.fleet.rollout.run_rollout`` on a thread
    svg.py       server-rendered charts
    auth.py      loopback by default; a token or basic auth for any other address
    app.py       the Starlette routes, pages and server-sent events
    serve.py     the broker connection and the uvicorn server
    templates/   Jinja2 pages; static/ the stylesheet and the live-update script
"""
