# nothing: the extension config and packaging steps need a real Slicer build
