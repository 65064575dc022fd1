"""Ray Serve applications of afmrl (Serve config import paths: serve_apps.<module>:<builder>)."""
