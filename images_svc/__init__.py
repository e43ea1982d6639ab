"""images_svc: App Engine's Images API as a gRPC service, with Pillow doing the pixels."""
