"""Images as the preprocess stage takes them, with no Ray inside: an image URL -> bytes within the limits
(`source`) -> a header read before any pixel (`decode`: the pixel limit refuses a decompression bomb first) -> an
oriented RGB image -> the manifest's resize (`resize`) -> (3,S,S) uint8 and its content hash (`pipeline`).
Every way an image can be bad raises the contract's InvalidImage, naming the request field."""
