"""Generated gRPC stubs for modeledit.v1 (see edit_serve.protogen). Do not edit."""
