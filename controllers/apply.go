package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// fieldOwner is the field manager of everything the operator applies.
const fieldOwner = client.FieldOwner("kuberelay")

// applier makes the cluster hold the objects the operator owns, with server-side apply
// forcing ownership, as GitOps tools own theirs: a kubectl edit or scale of a relay's
// Deployment, Service, ConfigMap, Secret, ServiceAccount or PodDisruptionBudget is
// undone at the reconcile it triggers. It remembers, per object, the hash of what it
// applied and the resourceVersion the API server answered, and skips the request only
// while both still hold: the desired state is the same and nobody has changed the
// object since. So an idle relay costs no API writes, and any change to an owned
// object, by anyone, is met by an apply. After a restart every object is applied once
// more; the API server stores nothing for an apply that changes nothing.
type applier struct {
	mu sync.Mutex
	// last is keyed by the owning relay, so a deleted relay's records go with it.
	last map[types.NamespacedName]map[objectKey]appliedState
}

type objectKey struct {
	gvk  schema.GroupVersionKind
	name types.NamespacedName
}

type appliedState struct {
	hash, resourceVersion string
}

func newApplier() *applier {
	return &applier{last: map[types.NamespacedName]map[objectKey]appliedState{}}
}

// apply makes the cluster hold desired (a fully specified object with its owner
// reference set) for the relay owner.
func (a *applier) apply(ctx context.Context, c client.Client, owner types.NamespacedName, desired client.Object) error {
	gvk, err := apiutil.GVKForObject(desired, c.Scheme())
	if err != nil {
		return err
	}
	desired.GetObjectKind().SetGroupVersionKind(gvk)
	desired.SetManagedFields(nil)
	desired.SetResourceVersion("")
	hash, err := objectHash(desired)
	if err != nil {
		return err
	}
	key := objectKey{gvk: gvk, name: client.ObjectKeyFromObject(desired)}

	// Only metadata is read, from the cache, so this costs no request and the cache
	// never holds Secret data.
	current := &metav1.PartialObjectMetadata{}
	current.SetGroupVersionKind(gvk)
	switch err := c.Get(ctx, key.name, current); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	case current.GetDeletionTimestamp() == nil:
		a.mu.Lock()
		last, ok := a.last[owner][key]
		a.mu.Unlock()
		if ok && last.hash == hash && last.resourceVersion == current.GetResourceVersion() {
			return nil
		}
	}

	//nolint:staticcheck // typed objects are applied as a whole; apply configurations would duplicate every builder
	if err := c.Patch(ctx, desired, client.Apply, fieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %s %s: %w", gvk.Kind, desired.GetName(), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last[owner] == nil {
		a.last[owner] = map[objectKey]appliedState{}
	}
	a.last[owner][key] = appliedState{hash: hash, resourceVersion: desired.GetResourceVersion()}
	return nil
}

// forget drops the records of a relay that is gone.
func (a *applier) forget(owner types.NamespacedName) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.last, owner)
}

// objectHash is a stable digest of an object as the operator would apply it.
func objectHash(obj client.Object) (string, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12]), nil
}

// deleteIfExists removes an object the relay no longer needs (a disabled
// PodDisruptionBudget). It asks the cache first, so that a resync makes no request
// for an object that is already gone.
func deleteIfExists(ctx context.Context, c client.Client, obj client.Object) error {
	gvk, err := apiutil.GVKForObject(obj, c.Scheme())
	if err != nil {
		return err
	}
	current := &metav1.PartialObjectMetadata{}
	current.SetGroupVersionKind(gvk)
	switch err := c.Get(ctx, client.ObjectKeyFromObject(obj), current); {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case current.GetDeletionTimestamp() != nil:
		return nil
	}
	if err := c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
