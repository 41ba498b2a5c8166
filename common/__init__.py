"""What the web front end and the GPU workers share: settings, keys, events and errors."""
