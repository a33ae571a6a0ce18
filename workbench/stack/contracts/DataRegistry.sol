// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// Who may read a file, and the file password encrypted for them.
struct Permission {
    address account;
    string key;
}

/// The workbench's DataRegistry: the subset of Vana's that the data-portability flow uses,
/// with the same function and event signatures. Only the Permissions contract writes.
contract DataRegistry {
    struct FileResponse {
        uint256 id;
        address ownerAddress;
        string url;
        uint256 schemaId;
        uint256 addedAtBlock;
    }

    bytes32 public constant DATA_PORTABILITY_ROLE = keccak256("DATA_PORTABILITY_ROLE");

    /// The DataPortabilityPermissions contract, fixed at deployment (its address is predicted).
    address public immutable dataPortability;
    uint256 public filesCount;
    mapping(uint256 fileId => FileResponse) private _files;
    mapping(bytes32 urlHash => uint256 fileId) private _fileIdByUrlHash;
    mapping(uint256 fileId => mapping(address account => string key)) public filePermissions;

    event FileAdded(uint256 indexed fileId, address indexed ownerAddress, string url);
    event PermissionGranted(uint256 indexed fileId, address indexed account);

    error AccessControlUnauthorizedAccount(address account, bytes32 neededRole);
    error InvalidUrl();
    error FileUrlAlreadyUsed();
    error FileNotFound();

    constructor(address dataPortability_) {
        dataPortability = dataPortability_;
    }

    modifier onlyDataPortability() {
        if (msg.sender != dataPortability) {
            revert AccessControlUnauthorizedAccount(msg.sender, DATA_PORTABILITY_ROLE);
        }
        _;
    }

    function files(uint256 fileId) external view returns (FileResponse memory) {
        return _files[fileId];
    }

    function fileIdByUrl(string calldata url) external view returns (uint256) {
        return _fileIdByUrlHash[keccak256(bytes(url))];
    }

    function addFileWithPermissionsAndSchema(
        string calldata url,
        address ownerAddress,
        Permission[] calldata permissions,
        uint256 schemaId
    ) external onlyDataPortability returns (uint256 fileId) {
        if (bytes(url).length == 0) revert InvalidUrl();
        bytes32 urlHash = keccak256(bytes(url));
        if (_fileIdByUrlHash[urlHash] != 0) revert FileUrlAlreadyUsed();
        fileId = ++filesCount;
        _fileIdByUrlHash[urlHash] = fileId;
        _files[fileId] = FileResponse(fileId, ownerAddress, url, schemaId, block.number);
        emit FileAdded(fileId, ownerAddress, url);
        _grant(fileId, permissions);
    }

    /// For a file the user registered before: more readers, and the schema if one is given.
    function addFilePermissionsAndSchema(
        uint256 fileId,
        Permission[] calldata permissions,
        uint256 schemaId
    ) external onlyDataPortability {
        if (_files[fileId].id == 0) revert FileNotFound();
        if (schemaId != 0) _files[fileId].schemaId = schemaId;
        _grant(fileId, permissions);
    }

    function _grant(uint256 fileId, Permission[] calldata permissions) private {
        for (uint256 i = 0; i < permissions.length; ++i) {
            filePermissions[fileId][permissions[i].account] = permissions[i].key;
            emit PermissionGranted(fileId, permissions[i].account);
        }
    }
}
