"""ESPnet tasks of espnet-hdmole."""
