"""The Streamlit leaderboard: ``app.py`` is the script, ``server.serve`` starts it on 127.0.0.1."""
