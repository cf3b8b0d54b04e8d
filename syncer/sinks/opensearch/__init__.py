"""The OpenSearch sink: one client factory and error translator (`client`), the
versioned bulk writer (`sink`), searchsync's index mark (`marks`) and the alias swap of a
resync into a new index (`aliases`)."""
