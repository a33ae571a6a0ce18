// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DataRegistry, Permission} from "./DataRegistry.sol";
import {DataPortabilityServers} from "./DataPortabilityServers.sol";
import {DataPortabilityGrantees} from "./DataPortabilityGrantees.sol";

/// The workbench's DataPortabilityPermissions: a user signs one EIP-712 message that registers
/// files, trusts a server and grants a grantee access; anyone (the app's relayer) submits it.
/// Same signatures, EIP-712 domain and types as Vana's for the subset the flow uses.
contract DataPortabilityPermissions {
    struct ServerFilesAndPermissionInput {
        uint256 nonce;
        uint256 granteeId;
        string grant;
        string[] fileUrls;
        uint256[] schemaIds;
        address serverAddress;
        string serverUrl;
        string serverPublicKey;
        Permission[][] filePermissions;
    }

    struct PermissionInfo {
        uint256 id;
        address grantor;
        uint256 nonce;
        uint256 granteeId;
        string grant;
        uint256 startBlock;
        uint256 endBlock;
        uint256[] fileIds;
    }

    string private constant NAME = "VanaDataPortabilityPermissions";
    string private constant VERSION = "1";
    bytes32 private constant DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    bytes32 private constant PERMISSION_TYPEHASH =
        keccak256("Permission(address account,string key)");
    // EIP-712: referenced struct types follow the primary type, sorted by name.
    bytes32 private constant SERVER_FILES_AND_PERMISSION_TYPEHASH = keccak256(
        "ServerFilesAndPermission(uint256 nonce,uint256 granteeId,string grant,string[] fileUrls,"
        "uint256[] schemaIds,address serverAddress,string serverUrl,string serverPublicKey,"
        "Permission[][] filePermissions)Permission(address account,string key)"
    );
    // Upper bound of s in canonical signatures (secp256k1 n / 2): rejects malleable twins.
    uint256 private constant MAX_S =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    DataRegistry public immutable dataRegistry;
    DataPortabilityServers public immutable dataPortabilityServers;
    DataPortabilityGrantees public immutable dataPortabilityGrantees;
    uint256 private immutable _deployChainId;
    bytes32 private immutable _deployDomainSeparator;

    uint256 public permissionsCount;
    mapping(address user => uint256) public userNonce;
    mapping(uint256 permissionId => PermissionInfo) private _permissions;

    event PermissionAdded(
        uint256 indexed permissionId,
        address indexed user,
        uint256 indexed granteeId,
        string grant,
        uint256[] fileIds
    );

    error ECDSAInvalidSignature();
    error ECDSAInvalidSignatureLength(uint256 length);
    error ECDSAInvalidSignatureS(bytes32 s);
    error InvalidNonce(uint256 expectedNonce, uint256 providedNonce);
    error EmptyGrant();
    error InvalidSchemaIdsLength(uint256 filesLength, uint256 schemaIdsLength);
    error InvalidPermissionsLength(uint256 filesLength, uint256 permissionsLength);
    error NotFileOwner(address fileOwner, address requestor);

    constructor(DataRegistry registry, DataPortabilityServers servers_, DataPortabilityGrantees grantees_) {
        dataRegistry = registry;
        dataPortabilityServers = servers_;
        dataPortabilityGrantees = grantees_;
        _deployChainId = block.chainid;
        _deployDomainSeparator = _buildDomainSeparator();
    }

    /// Registers the files and the server for the signer and grants `granteeId` access.
    function addServerFilesAndPermissions(
        ServerFilesAndPermissionInput calldata input,
        bytes calldata signature
    ) external returns (uint256) {
        address user = _recover(_hashTypedData(_hashInput(input)), signature);
        // The nonce binds the signature to one use: a replay finds the nonce moved on.
        if (input.nonce != userNonce[user]) revert InvalidNonce(userNonce[user], input.nonce);
        userNonce[user] = input.nonce + 1;
        if (bytes(input.grant).length == 0) revert EmptyGrant();
        uint256 n = input.fileUrls.length;
        if (input.schemaIds.length != n) revert InvalidSchemaIdsLength(n, input.schemaIds.length);
        if (input.filePermissions.length != n) {
            revert InvalidPermissionsLength(n, input.filePermissions.length);
        }
        if (input.serverAddress != address(0)) {
            dataPortabilityServers.addAndTrustServerByManager(
                user,
                DataPortabilityServers.AddServerInput(
                    input.serverAddress, input.serverPublicKey, input.serverUrl
                )
            );
        }
        uint256[] memory fileIds = new uint256[](n);
        for (uint256 i = 0; i < n; ++i) {
            fileIds[i] = _addFile(user, input.fileUrls[i], input.schemaIds[i], input.filePermissions[i]);
        }
        return _storePermission(user, input.nonce, input.granteeId, input.grant, fileIds);
    }

    function permissions(uint256 permissionId) external view returns (PermissionInfo memory) {
        return _permissions[permissionId];
    }

    /// EIP-5267: lets wallets and tools read the signing domain from the contract.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", NAME, VERSION, block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    function _addFile(address user, string calldata url, uint256 schemaId, Permission[] calldata perms)
        private
        returns (uint256 fileId)
    {
        fileId = dataRegistry.fileIdByUrl(url);
        if (fileId == 0) return dataRegistry.addFileWithPermissionsAndSchema(url, user, perms, schemaId);
        // A URL the user registered before gains readers; someone else's file is refused.
        address owner = dataRegistry.files(fileId).ownerAddress;
        if (owner != user) revert NotFileOwner(owner, user);
        dataRegistry.addFilePermissionsAndSchema(fileId, perms, schemaId);
    }

    function _storePermission(
        address user,
        uint256 nonce,
        uint256 granteeId,
        string calldata grant,
        uint256[] memory fileIds
    ) private returns (uint256 id) {
        id = ++permissionsCount;
        PermissionInfo storage p = _permissions[id];
        p.id = id;
        p.grantor = user;
        p.nonce = nonce;
        p.granteeId = granteeId;
        p.grant = grant;
        p.startBlock = block.number;
        p.fileIds = fileIds;
        dataPortabilityGrantees.addPermissionToGrantee(granteeId, id); // reverts GranteeNotFound
        emit PermissionAdded(id, user, granteeId, grant, fileIds);
    }

    // ---- EIP-712 hashing: arrays hash the concatenation of their elements' encodings ----

    function _hashInput(ServerFilesAndPermissionInput calldata s) private pure returns (bytes32) {
        // Two abi.encode halves of static words keep the stack shallow; the bytes are the same.
        return keccak256(
            bytes.concat(
                abi.encode(
                    SERVER_FILES_AND_PERMISSION_TYPEHASH,
                    s.nonce,
                    s.granteeId,
                    keccak256(bytes(s.grant)),
                    _hashStrings(s.fileUrls)
                ),
                abi.encode(
                    keccak256(abi.encodePacked(s.schemaIds)),
                    s.serverAddress,
                    keccak256(bytes(s.serverUrl)),
                    keccak256(bytes(s.serverPublicKey)),
                    _hashPermissionMatrix(s.filePermissions)
                )
            )
        );
    }

    function _hashStrings(string[] calldata values) private pure returns (bytes32) {
        bytes32[] memory hashes = new bytes32[](values.length);
        for (uint256 i = 0; i < values.length; ++i) {
            hashes[i] = keccak256(bytes(values[i]));
        }
        return keccak256(abi.encodePacked(hashes));
    }

    function _hashPermissionMatrix(Permission[][] calldata matrix) private pure returns (bytes32) {
        bytes32[] memory hashes = new bytes32[](matrix.length);
        for (uint256 i = 0; i < matrix.length; ++i) {
            hashes[i] = _hashPermissionList(matrix[i]);
        }
        return keccak256(abi.encodePacked(hashes));
    }

    function _hashPermissionList(Permission[] calldata list) private pure returns (bytes32) {
        bytes32[] memory hashes = new bytes32[](list.length);
        for (uint256 i = 0; i < list.length; ++i) {
            hashes[i] = keccak256(
                abi.encode(PERMISSION_TYPEHASH, list[i].account, keccak256(bytes(list[i].key)))
            );
        }
        return keccak256(abi.encodePacked(hashes));
    }

    function _hashTypedData(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
    }

    function _domainSeparator() private view returns (bytes32) {
        // Recomputed only if the chain forked to a new id since deployment.
        return block.chainid == _deployChainId ? _deployDomainSeparator : _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256(bytes(NAME)),
                keccak256(bytes(VERSION)),
                block.chainid,
                address(this)
            )
        );
    }

    /// ECDSA recovery that accepts only canonical signatures (low s, v of 27 or 28).
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address signer) {
        if (signature.length != 65) revert ECDSAInvalidSignatureLength(signature.length);
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > MAX_S) revert ECDSAInvalidSignatureS(s);
        if (v != 27 && v != 28) revert ECDSAInvalidSignature();
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert ECDSAInvalidSignature();
    }
}
