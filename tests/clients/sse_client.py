"""One Python SSE client against a URL, each event it dispatches printed as a JSON line.

Run by tests/real_clients.rs with the virtualenv .ci/run makes (tests/clients/.venv, from
requirements.txt). The clients are used the way their users use them:

  sseclient-requests  sseclient-py over `requests.get(url, stream=True)` (cdviz-collector's example)
  sseclient-urllib3   sseclient-py over a urllib3 response with `preload_content=False`
  httpx-sse           `httpx_sse.connect_sse` on an `httpx.Client`

None of them reconnects by itself; the script ends when the stream does.
"""

import json
import sys


def emit(kind, data, id_):
    print(json.dumps({"type": kind, "data": data, "id": id_}, ensure_ascii=False), flush=True)


def sseclient_requests(url):
    import requests
    import sseclient

    response = requests.get(url, stream=True, headers={"Accept": "text/event-stream"})
    response.raise_for_status()
    for event in sseclient.SSEClient(response).events():
        emit(event.event, event.data, event.id)


def sseclient_urllib3(url):
    import sseclient
    import urllib3

    response = urllib3.PoolManager().request(
        "GET", url, preload_content=False, headers={"Accept": "text/event-stream"}
    )
    if response.status != 200:
        raise SystemExit(f"status {response.status}")
    for event in sseclient.SSEClient(response).events():
        emit(event.event, event.data, event.id)


def httpx_sse(url):
    import httpx
    from httpx_sse import connect_sse

    with httpx.Client(timeout=None) as client:
        with connect_sse(client, "GET", url) as source:
            source.response.raise_for_status()
            for event in source.iter_sse():
                emit(event.event, event.data, event.id or None)


CLIENTS = {
    "sseclient-requests": sseclient_requests,
    "sseclient-urllib3": sseclient_urllib3,
    "httpx-sse": httpx_sse,
}

if __name__ == "__main__":
    CLIENTS[sys.argv[1]](sys.argv[2])
