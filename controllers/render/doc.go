// Package render turns one SmtpRelay, the RelayDomains attached to it and the
// Smarthosts and Secrets they reference into the relay's configuration (relay.yaml and
// the files of the operator-owned Secret) and into the objects the operator owns for
// that relay: ConfigMap, Secret, ServiceAccount, Service, Deployment and
// PodDisruptionBudget.
//
// Everything here is a pure function of objects the reconciler already fetched: no
// Kubernetes client, no clock, and output sorted wherever order is not meaningful, so
// an unchanged input renders byte-identical output and a reconcile that changes
// nothing writes nothing. The one exception is bcrypt, which salts every hash
// differently: the PasswordHasher keeps the hash of an unchanged password (in memory,
// and across operator restarts through Inputs.Previous).
//
// Config reports two kinds of problems. A RelayDomain whose own references are broken
// is left out of the configuration and reported in Result.DomainResults, so one bad
// domain never takes the relay down. A problem with the relay itself (its certificate,
// its users, its default smarthost, its listeners) is returned as an *Error whose
// Reason and Message belong in the SmtpRelay's conditions. Messages name the object and
// key to fix and never contain a secret value.
//
// The Deployment's pod template depends only on what the relay cannot reload (image,
// listeners, resources, scheduling): domains, users, keys, certificates and limits
// reach the pods through the mounted ConfigMap and Secret volumes, without a restart.
package render
