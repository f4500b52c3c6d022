"""A certificate authority for federations: CA, aggregator and collaborator certificates, and CSR signing.

Used by ``fedagg certs`` and ``fedagg demo``. Keys are ECDSA P-256; the aggregator certificate carries the
DNS names and IP addresses collaborators dial (OpenFL checks the SAN against the address it connects to),
and each collaborator certificate carries the collaborator's name as its CN, which is how fedagg and OpenFL
identify it.

Two ways to give a site its certificate:

* central: :func:`write_federation_pki` and :func:`add_to_federation_pki` make every key next to the CA, for
  a federation whose operator also hands out the keys;
* by request: the site runs :func:`write_request` (its private key never leaves its directory), sends the
  CSR, and the CA holder runs :func:`sign_request_file`, which checks the CSR and returns a certificate
  without ever seeing the key (OpenFL's ``fx collaborator generate-cert-request`` / ``certify``).

Every name that becomes a file name or a CN is checked first (:func:`check_name`, :func:`check_host`), so a
name such as ``../../x`` is refused instead of writing outside the output directory.

Modules: :mod:`~fedagg.pki.authority` (the CA: issuing and signing, loading it from its directory),
:mod:`~fedagg.pki.requests` (a site's key and CSR, checking and signing a CSR file), :mod:`~fedagg.pki.federation`
(every site's files at once, in fedagg's, Kubernetes' and OpenFL's layouts), :mod:`~fedagg.pki.names` (names
fit for a CN and a file name), :mod:`~fedagg.pki.files` (how key and certificate files are written) and
:mod:`~fedagg.pki.errors`.
"""
