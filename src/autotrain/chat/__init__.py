"""`aitraining chat`: a local page to talk to a finished run and see its answers beside its starting model's.

- `command.py`: the command's flags, its checks (a folder that is no finished run, the port, the extra), the server;
- `runs.py`: which runs are offered, and what the list and the card show of each (standard library only);
- `engine.py`: the loaded run and its starting point, and one answer streamed token by token;
- `server.py`: the Starlette app: the page, its runs, the answers as server-sent events, one at a time;
- `static/`: the page itself, served from here (no CDN, nothing fetched from elsewhere).

The server needs the `chat` extra (`pip install 'aitraining[chat]'`: starlette and uvicorn).
"""
