"""Learning the generator's style-space read-outs (``models/generated/directions.json``) that the
generated identities steer and screen candidates by (``faces.readouts.Directions``): ``sample``
renders and measures faces of the generator, a person labels their contact sheets (``labels.json``),
``learn`` fits the read-outs. docs/research/generated-identities.md has the figures."""
